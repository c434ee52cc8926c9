"""Conveyor's domain: jobs, job types, the ports, and the use cases. Pure Python and attrs."""
