"""Whether a reading is a digit at all: the one rule every reader of this project asks.

The default model learned to answer pictures that are not digits (letters, scribbles, shapes,
dashes) with probabilities spread over all ten digits (training/nondigits.py), and its
probabilities are calibrated (a temperature fitted on held-out training digits, applied by
reading.models.predict_batch). So a reading whose likeliest digit is not even an even bet names
no digit: the picture is not a digit.
"""

# The calibrated probability under which the likeliest digit is not taken as a digit. Chosen with
# benchmarks/choose_threshold.py on held-out training digits alone (never the test set or the
# benchmarks' kinds): the highest threshold that declines at most 0.5% of each kind of them was
# 0.51 (docs/accuracy.md); an even bet is kept.
NOT_A_DIGIT_BELOW = 0.5


def why_not_a_digit(probabilities):
    """None when the ten calibrated probabilities name a digit, else the short reason why not."""
    probabilities = [float(p) for p in probabilities]
    best = max(probabilities)
    if best < NOT_A_DIGIT_BELOW:
        return f"no digit is likely (the likeliest, {probabilities.index(best)}, at {best:.0%})"
    return None
