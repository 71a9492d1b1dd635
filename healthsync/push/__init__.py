"""Push: the hub that streams download deltas to websocket subscribers."""
