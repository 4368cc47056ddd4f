"""What runs inside a lab: the functions' code and the hosts' services."""
