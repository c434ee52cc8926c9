"""The worker: claims jobs from the queue and runs them, with no HTTP involved."""
