"""Greedy exact match (``kd eval --exact-match``) on the demo slice labelled by the real job."""
import json

from student_train.evaluate import exact_match


def test_exact_match_of_the_teacher(label_set, teacher_dir):
    from student_train.stream import LabelSet
    raw = exact_match(teacher_dir, label_set["out"], "raw", batch_size=64)
    simp = exact_match(teacher_dir, label_set["out"], "simplified", batch_size=64)
    assert raw["rows"] == simp["rows"] == 48
    # with its instruction the teacher reproduces most responses (they carry 5% typos); given
    # only the terse tag it never saw, far fewer
    assert raw["exact"] > 0.5
    assert simp["exact"] < raw["exact"] - 0.3
    # left padding in a batch decodes exactly as one prompt at a time
    one = exact_match(teacher_dir, label_set["out"], "raw", batch_size=1)
    assert one["responses"] == raw["responses"]
    # a match means the decoded tokens are the row's response, EOS included
    arrays, sel = LabelSet(label_set["out"], views=("raw",)).shard(0)
    for r in sel:
        ex = arrays.example_id[r]
        ref = arrays.ids[arrays.ids_off[r] + arrays.label_start[r]:arrays.ids_off[r + 1]].tolist()
        assert raw["correct"][ex] == (raw["responses"][ex] == ref)
    assert any(raw["correct"].values()) and not all(raw["correct"].values())


def test_kd_eval_exact_match_flag(label_set, teacher_dir, tmp_path):
    import kd_cli
    path = tmp_path / "eval.json"
    assert kd_cli.main(["eval", "--labels", label_set["out"], "--student", f"t={teacher_dir}",
                        "--views", "raw", "--exact-match", "--json", str(path)]) == 0
    (row,) = json.loads(path.read_text())
    assert row["exact"] == exact_match(teacher_dir, label_set["out"], "raw")["exact"]
