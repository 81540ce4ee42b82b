"""The connection to AWS IoT Core and the routes between it and the local broker."""
