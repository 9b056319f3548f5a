"""The operator's side of `runstore`: commands that talk to a running stack (the HTTP API,
and Kafka + MongoDB for the dead-letter topic). Built on typer (click) and rich."""
