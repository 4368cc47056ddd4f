"""What runs inside a lab: the functions' code (the Lambda Runtime API in each execution
environment) and the hosts' services."""
