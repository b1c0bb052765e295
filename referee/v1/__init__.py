"""Generated gRPC stubs for the referee.v1 contract; regenerate with `make proto`."""
