"""The MoRA model, its trainer and the downstream benchmark."""
