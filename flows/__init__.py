"""The example integration flow of prefect-incomplete and its loopback services."""
