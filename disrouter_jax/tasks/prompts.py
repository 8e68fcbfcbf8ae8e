"""Scenario instructions and the refusal text: the prompt-side contracts, defined once."""

# The exact reply that forwards a query to the next agent in the cascade.
REFUSAL = "I don't know!"
