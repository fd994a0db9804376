"""What runs on a device. Imports nothing of the server side: no SQL, no FastAPI, no
Prefect, no boto3 (tests check it in a fresh interpreter)."""

from storage_core.device.client import DeviceUploadReport, GatewayClient, device_upload

__all__ = ["DeviceUploadReport", "GatewayClient", "device_upload"]
