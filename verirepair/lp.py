"""The one way this package makes a HiGHS model (LPs of verify, MILPs of repair)."""

from __future__ import annotations


def quiet_highs():
    """A fresh highspy.Highs with its one-time console banner sent to the log."""
    import highspy

    from verirepair.verify.marabou_engine import captured_output

    with captured_output():
        model = highspy.Highs()
    model.setOptionValue("output_flag", False)
    return model
