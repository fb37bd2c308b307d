"""Handlers for django-anymail's tracking signal. (Placeholder until the ESP provider lands.)"""
