from tests.conftest import run_cli


def test_tiny_run_end_to_end(tiny_preset, tmp_path):
    preset = tiny_preset()
    proc = run_cli(str(preset), "--no-ui", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    run = next((tmp_path / "runs").glob("tiny-*"))
    assert (run / "checkpoints" / "last.pt").is_file()
    assert "completed" in proc.stdout
