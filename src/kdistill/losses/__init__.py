"""The losses: divergences, the label and token terms, and the one Objective that weighs them (T^2 applied once)."""
