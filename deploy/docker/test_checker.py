"""Sabotage tests of the nemesis checker: each rule is shown a history with the bug in it and
must fire, and a history without it and must stay quiet. Run: python3 -m unittest discover
deploy/docker (CI does)."""

import importlib.machinery
import importlib.util
import re
import unittest
from pathlib import Path

_path = Path(__file__).resolve().parent / "nemesis"
_loader = importlib.machinery.SourceFileLoader("nemesis", str(_path))
_spec = importlib.util.spec_from_loader("nemesis", _loader)
nemesis = importlib.util.module_from_spec(_spec)
_loader.exec_module(nemesis)


def put(key, value, outcome="ok", saw=(), end=1.0):
    return {"kind": "put", "key": key, "value": value, "outcome": outcome, "saw": list(saw),
            "node": 1, "end": end}


def delete(key, saw, outcome="ok"):
    return {"kind": "delete", "key": key, "outcome": outcome, "saw": list(saw), "node": 1,
            "end": 2.0}


def add(element, value, saw=(), outcome="ok"):
    return {"kind": "set-add", "key": nemesis.SET_KEY, "value": value, "element": element,
            "outcome": outcome, "saw": list(saw), "node": 1, "end": 1.0}


def get(key, read):
    return {"kind": "get", "key": key, "outcome": "ok", "read": list(read)}


class CheckerTest(unittest.TestCase):
    def verdict(self, ops, final):
        return nemesis.check(ops, {k: set(v) for k, v in final.items()})

    def test_an_acknowledged_write_missing_at_the_end_is_lost(self):
        v = self.verdict([put("a", "v1")], {"a": []})
        self.assertEqual([x["value"] for x in v["lost"]], ["v1"])

    def test_a_write_present_at_the_end_is_not_lost(self):
        v = self.verdict([put("a", "v1"), put("a", "v2")], {"a": ["v1", "v2"]})
        self.assertEqual(v["lost"], [])

    def test_a_write_superseded_by_an_acknowledged_context_write_is_not_lost(self):
        ops = [put("a", "v1"), get("a", ["v1"]), put("a", "v2", saw=["v1"])]
        self.assertEqual(self.verdict(ops, {"a": ["v2"]})["lost"], [])

    def test_superseding_is_followed_along_a_chain(self):
        ops = [put("a", "v1"), put("a", "v2", saw=["v1"]), put("a", "v3", saw=["v2"])]
        self.assertEqual(self.verdict(ops, {"a": ["v3"]})["lost"], [])

    def test_a_write_that_never_reached_a_node_supersedes_nothing(self):
        ops = [put("a", "v1"), put("a", "v2", outcome="fail", saw=["v1"])]
        v = self.verdict(ops, {"a": []})
        self.assertEqual([x["value"] for x in v["lost"]], ["v1"])

    def test_an_indeterminate_write_may_have_superseded_and_is_reported(self):
        ops = [put("a", "v1"), put("a", "v2", outcome="info", saw=["v1"])]
        v = self.verdict(ops, {"a": ["v2"]})
        self.assertEqual(v["lost"], [])
        self.assertEqual(v["superseded_only_by_unacknowledged"], [{"key": "a", "value": "v1"}])

    def test_a_write_to_another_key_does_not_supersede(self):
        ops = [put("a", "v1"), put("b", "v2", saw=["v1"])]
        self.assertEqual(len(self.verdict(ops, {"a": [], "b": ["v2"]})["lost"]), 1)

    def test_a_deleted_value_back_at_the_end_is_resurrected(self):
        ops = [put("a", "v1"), delete("a", ["v1"])]
        v = self.verdict(ops, {"a": ["v1"]})
        self.assertEqual([x["value"] for x in v["resurrected"]], ["v1"])
        self.assertEqual(self.verdict(ops, {"a": []})["resurrected"], [])

    def test_a_failed_delete_does_not_count_as_a_resurrection(self):
        ops = [put("a", "v1"), delete("a", ["v1"], outcome="info")]
        self.assertEqual(self.verdict(ops, {"a": ["v1"]})["resurrected"], [])

    def test_a_superseded_value_back_at_the_end_is_reported(self):
        ops = [put("a", "v1"), put("a", "v2", saw=["v1"])]
        v = self.verdict(ops, {"a": ["v1", "v2"]})
        self.assertEqual([x["value"] for x in v["superseded_back"]], ["v1"])

    def test_an_acknowledged_set_element_missing_from_the_union_is_lost(self):
        ops = [add("e1", "e1"), add("e2", "e1,e2", saw=["e1"]), add("e3", "e3")]
        v = self.verdict(ops, {nemesis.SET_KEY: ["e1,e2"]})
        self.assertEqual([x["element"] for x in v["lost_elements"]], ["e3"])
        v = self.verdict(ops, {nemesis.SET_KEY: ["e1,e2", "e3"]})
        self.assertEqual(v["lost_elements"], [])
        self.assertEqual(v["set_elements_present"], 3)

    def test_a_value_nobody_wrote_is_a_phantom(self):
        v = self.verdict([put("a", "v1")], {"a": ["v1", "zz"]})
        self.assertEqual(v["phantom"], [["a", "zz"]])


class ScheduleTest(unittest.TestCase):
    def test_a_seed_gives_one_schedule_and_every_kind_early(self):
        a = nemesis.schedule(5, 3, 5)
        self.assertEqual(a, nemesis.schedule(5, 3, 5))
        self.assertNotEqual(a, nemesis.schedule(6, 3, 5))
        self.assertEqual({f["kind"] for f in a[: len(nemesis.KINDS)]}, set(nemesis.KINDS))

    def test_the_ci_run_meets_every_kind_of_fault(self):
        ci = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
        minutes = float(re.search(r"CAIRN_NEMESIS_MINUTES:-([0-9.]+)", ci).group(1))
        seed = int(re.search(r"CAIRN_NEMESIS_SEED:-([0-9]+)", ci).group(1))
        layout = "--layout" in re.search(r"deploy/docker/nemesis .*\n.*", ci).group(0)
        self.assertTrue(layout, "CI runs the nemesis with its layout changes")
        kinds = {f["kind"] for f in nemesis.schedule(seed, minutes, 5, layout=layout)}
        self.assertEqual(kinds, set(nemesis.KINDS + nemesis.LAYOUT_KINDS))

    def test_layout_changes_only_when_asked(self):
        self.assertNotIn("leave", {f["kind"] for f in nemesis.schedule(5, 10, 5)})
        early = nemesis.schedule(5, 10, 5, layout=True)[: len(nemesis.KINDS) + 1]
        self.assertEqual({f["kind"] for f in early}, set(nemesis.KINDS + nemesis.LAYOUT_KINDS))

    def test_faults_fit_the_run_and_do_not_overlap(self):
        for seed in range(50):
            faults = nemesis.schedule(seed, 4, 5)
            for f, g in zip(faults, faults[1:]):
                self.assertLess(f["at"] + f["dur"], g["at"])
            self.assertLessEqual(faults[-1]["at"] + faults[-1]["dur"], 4 * 60)
            wipes = [f["at"] for f in faults if f["kind"] == "wipe"]
            for a, b in zip(wipes, wipes[1:]):
                self.assertGreaterEqual(b - a, nemesis.WIPE_COOLDOWN_S)

    def test_partitions_cut_only_links_between_sides(self):
        bridge = {"kind": "bridge", "bridge": 3, "sides": [[1, 2], [4, 5]]}
        links = nemesis.cut_links(bridge, 5)
        self.assertEqual(sorted(links), [(1, 4), (1, 5), (2, 4), (2, 5)])
        self.assertFalse(any(3 in link for link in links))
        self.assertEqual(len(nemesis.cut_links({"kind": "isolate", "node": 2}, 5)), 4)


if __name__ == "__main__":
    unittest.main()
