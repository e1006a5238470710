"""One router per resource; ``gateway.app`` assembles them."""
