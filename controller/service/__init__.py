"""The controller as a service: LineService (role check, audit and command dispatch), the HTTP
API, the MQTT bridge, users and roles."""
