"""The gRPC transport: servicers that only translate, and what they share."""
