"""Event.to_json is shallow for speed; it must write exactly what dataclasses.asdict would."""

import dataclasses
import json

from tui_trainer.engine.events import from_json
from tui_trainer.run.launch import prepare


def test_to_json_matches_asdict_and_round_trips(tiny_preset, tmp_path):
    seen = []
    session = prepare(tiny_preset(), ["train.epochs=1"], run_dir=tmp_path / "run", sinks=[seen.append])
    try:
        session.trainer.run()
    finally:
        session.close()
    kinds = {e.kind for e in seen}
    assert {"RunStarted", "StepReport", "EpochEnd", "CheckpointSaved", "Finished"} <= kinds
    for event in seen:
        fast = json.dumps(event.to_json())
        assert fast == json.dumps({"kind": event.kind, **dataclasses.asdict(event)})
        assert from_json(json.loads(fast)) == event
        assert event.json_line == json.dumps(event.to_json(), separators=(",", ":"))  # made once, shared
