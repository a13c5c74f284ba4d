"""The machine as the controller sees it: device protocols, drivers built from the line
configuration, telemetry and link health, the pollers and the safety cycle's timing."""
