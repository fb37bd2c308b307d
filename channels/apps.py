from django.apps import AppConfig


class ChannelsConfig(AppConfig):
    name = "channels"
    label = "delivery_channels"
    verbose_name = "Delivery channels"

    def ready(self) -> None:
        from channels import checks  # noqa: F401  (registers the system checks)
        from channels.webhooks import anymail  # noqa: F401  (connects the tracking receiver)
