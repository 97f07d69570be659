"""Whether a reading is a digit at all: the one rule every reader of this project asks.

A model trained only on digits gives every picture ten probabilities that sum to 1, so its
likeliest digit alone cannot say "none of these"; the rule below declines a reading whose
calibrated probabilities name no digit clearly.
"""

# The calibrated probability under which the likeliest digit is not taken as a digit.
NOT_A_DIGIT_BELOW = 0.5


def why_not_a_digit(probabilities):
    """None when the ten calibrated probabilities name a digit, else the short reason why not."""
    probabilities = [float(p) for p in probabilities]
    best = max(probabilities)
    if best < NOT_A_DIGIT_BELOW:
        return f"no digit is likely (the likeliest, {probabilities.index(best)}, at {best:.0%})"
    return None
