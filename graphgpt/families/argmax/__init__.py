"""The greedy next token: a row's argmax."""
