"""tools/dmd_step_profile.py: the trainer's phase labels reach the profile, with counts that
follow the generator / fake-score step ratio."""

from tools import dmd_step_profile


def test_phases_of_a_smoke_run_are_labelled_and_counted(capsys):
    table = dmd_step_profile.main(["--smoke", "--regress", "0.5"])
    rows = {label: (calls, host) for label, calls, host, _ in table}
    # --smoke: 2 steps at ratio 2 -> one generator step, two fake-score steps
    assert rows["dmd.generator_forward"][0] == 1 and rows["dmd.scores"][0] == 1
    assert rows["dmd.regression_forward"][0] == 1 and rows["dmd.generator_backward"][0] == 1
    assert rows["dmd.rollout"][0] == 2  # every step draws a rollout
    assert rows["dmd.fake_forward"][0] == 2 and rows["dmd.fake_backward"][0] == 2
    assert all(host > 0 for _, host in rows.values())
    assert "dmd.rollout" in capsys.readouterr().out
