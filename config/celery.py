from __future__ import annotations

import os

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger, worker_init

from config.logmasking import mask_celery_handlers

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("config")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# A worker replaces the root logger's handlers with its own (worker_hijack_root_logger), and
# redirects stdout into them: mask personal data there too.
after_setup_logger.connect(mask_celery_handlers, weak=False)
after_setup_task_logger.connect(mask_celery_handlers, weak=False)

# Imported once Django's settings are configured (above); it reads them at worker start.
from config.worker_priority import lower_if_serving_bulk  # noqa: E402

worker_init.connect(lower_if_serving_bulk, weak=False)
