"""The offline open extractor: phrases, cues, qualifiers, German/Swedish run-ons, real MIMIC wording."""

from __future__ import annotations

import pandas as pd
import pytest

from supreme_ecg.extract.glossary import fold, glossary, rules_version
from supreme_ecg.extract.lexicon import LexiconBackend, category_of, statement_entities
from supreme_ecg.settings import fixtures_dir

MIMIC = fixtures_dir() / "mimic_iv_ecg" / "statements.csv"


def names(statement: str) -> list[tuple]:
    return [(e["name"], e["polarity"]) for e in statement_entities(statement)]


def one(statement: str) -> dict:
    (e,) = statement_entities(statement)
    return e


def test_negation_and_coordination():
    assert names("no st elevation or t wave inversion") == [("st elevation", "absent"), ("t wave inversion", "absent")]


def test_hedges_make_findings_uncertain_and_stay_out_of_the_name():
    assert names("possible left atrial enlargement") == [("left atrial enlargement", "uncertain")]
    assert names("qrs changes v3/v4 may be due to lvh but cannot rule out anterior infarct") == [
        ("qrs changes", "present"), ("left ventricular hypertrophy", "uncertain"), ("anterior infarct", "uncertain")]
    assert names("linkshypertrophie möglich") == [("left ventricular hypertrophy", "uncertain")]
    assert names("inferior myokardskada bör övervägas") == [("inferior myocardial injury", "uncertain")]


def test_leads_acuity_and_severity_are_qualifiers():
    e = one("st segments are depressed in i, ii, avl, v4,5,6")
    assert e["name"] == "st depression" and e["qualifiers"]["leads"] == ["i", "ii", "avl", "v4", "v5", "v6"]
    assert one("t waves inverted in v1-v3")["qualifiers"]["leads"] == ["v1", "v2", "v3"]
    e = one("inferior infarct - age undetermined")
    assert (e["name"], e["qualifiers"]["acuity"]) == ("inferior infarct", "age undetermined")
    assert one("inferior infarct, old")["qualifiers"]["acuity"] == "old"
    e = one("marked sinus bradycardia")
    assert (e["name"], e["qualifiers"]["severity"]) == ("sinus bradycardia", "marked")
    e = one("*** consider acute st elevation mi ***")
    assert (e["name"], e["polarity"], e["qualifiers"]["acuity"]) == ("st elevation myocardial infarction", "uncertain", "acute")


def test_german_run_on_report_is_split_into_findings():
    got = names("sinusrhythmus a-v block i linkstyp qrs(t) abnormal    inferiorer infarkt     alter unbest. "
                "qt-verlÄngerung 4.46   unbestÄtigter bericht")
    assert got == [("sinus rhythm", "present"), ("first degree av block", "present"), ("left axis", "present"),
                   ("abnormal qrs(t)", "present"), ("inferior infarct", "present"), ("prolonged qt", "present")]
    assert names("sinusrhythmus ueberdrehter linkstyp linksanteriorer hemiblock") == [
        ("sinus rhythm", "present"), ("left axis deviation", "present"), ("left anterior fascicular block", "present")]
    assert names("ventrikulÄre extrasystole(n) sinusbradykardie sonst normales ekg") == [
        ("ventricular extrasystoles", "present"), ("sinus bradycardia", "present"), ("normal ecg", "present")]


def test_swedish_run_on_report_is_split_into_findings():
    got = names("sinusrytm a-v block i st-t sÄnkning, sÅsom vid    anterolateral ischemi eller vÄnster belastning")
    assert got == [("sinus rhythm", "present"), ("first degree av block", "present"), ("st-t depression", "present"),
                   ("anterolateral ischemia", "uncertain"), ("left ventricular strain", "uncertain")]
    assert names("sinusrytm vÄnster el-axel inget sÄkert patologiskt") == [("sinus rhythm", "present"), ("left axis", "present")]


def test_an_unknown_finding_becomes_its_own_entity():
    e = one("possible zorblatt wave splitting in v2")
    assert (e["name"], e["polarity"], e["category"], e["qualifiers"]["leads"]) == ("zorblatt wave splitting", "uncertain", "morphology", ["v2"])
    assert e["text"] == "zorblatt wave splitting"


@pytest.mark.parametrize("statement", ["abnormal ecg", "borderline ecg", "pathologisches ekg", "compared with ecg of 2019",
                                       "no significant change since last tracing", "4.46 unbestätigter bericht",
                                       "edit: norm 100", "warning: data quality may affect interpretation"])
def test_verdicts_comparisons_and_remarks_yield_nothing(statement):
    assert statement_entities(statement) == []


def test_normal_ecg_is_a_finding():
    assert names("otherwise normal ecg") == [("normal ecg", "present")]
    assert names("sinusrytm normalt ekg") == [("sinus rhythm", "present"), ("normal ecg", "present")]


def test_backend_answers_validate_and_carry_the_rules_version():
    backend = LexiconBackend()
    assert backend.model == f"open-lexicon-{rules_version()[:12]}" and backend.prompt_version == "none"
    (a, b) = backend.extract(["sinus rhythm with pvc(s)", ""])
    assert [e.name for e in a.entities] == ["sinus rhythm", "premature ventricular complex"] and a.error is None
    assert b.entities == [] and b.error is None
    assert a.entities[1].category == "rhythm" and category_of("left anterior fascicular block") == "conduction"


def test_glossary_is_versioned_and_folding_keeps_offsets():
    assert glossary()["version"] >= 1 and len(rules_version()) == 64
    assert fold("verlÄngerung f#r") == "verlangerung fur" and len(fold("Überdrehter")) == len("Überdrehter")


@pytest.mark.fixtures
@pytest.mark.skipif(not MIMIC.exists(), reason=f"no MIMIC statements at {MIMIC}")
def test_real_mimic_statements_get_sensible_names():
    top = pd.read_csv(MIMIC).sort_values("n_records", ascending=False).head(60)
    got = {s: names(s) for s in top.statement}
    assert got["sinus rhythm with borderline 1st degree a-v block"] == [("sinus rhythm", "present"), ("first degree av block", "present")]
    assert got["rbbb with left anterior fascicular block"] == [("right bundle branch block", "present"),
                                                              ("left anterior fascicular block", "present")]
    assert got["possible anteroseptal infarct - age undetermined"] == [("anteroseptal infarct", "uncertain")]
    assert got["atrial fibrillation with pvc(s) or aberrant ventricular conduction"][1] == ("premature ventricular complex", "present")
    assert all(got[s] for s in got), [s for s in got if not got[s]]
    assert all(e["text"] for s in top.statement for e in statement_entities(s))


# --- general MIMIC-style wording (regional lists, predicates, lead regions, labels, block types, premature beats)

def test_a_region_list_before_one_finding_is_distributed_one_entity_per_region():
    assert names("inferior/lateral st-t changes suggest myocardial infarct") == [
        ("inferior st-t changes", "present"), ("lateral st-t changes", "present"), ("myocardial infarct", "uncertain")]
    assert names("inferior and lateral st elevation, consider acute infarct")[:2] == [
        ("inferior st elevation", "present"), ("lateral st elevation", "present")]
    assert names("ant/septal and lateral st-t changes suggest myocardial infarct")[:2] == [
        ("anteroseptal st-t changes", "present"), ("lateral st-t changes", "present")]
    got = statement_entities("extensive infarct with possible acute inferior and lateral changes")
    assert [(e["name"], e["polarity"], e["qualifiers"]["acuity"]) for e in got] == [
        ("extensive infarct", "present", ""), ("inferior changes", "uncertain", "acute"), ("lateral changes", "uncertain", "acute")]
    assert all(e["name"] not in ("inferior", "lateral", "anteroseptal") for e in got)


def test_a_trailing_predicate_becomes_a_leading_modifier():
    assert names("lateral st-t changes are nonspecific") == [("nonspecific lateral st-t changes", "present")]
    assert names("inferior/lateral t wave changes are nonspecific") == [
        ("nonspecific inferior t wave changes", "present"), ("nonspecific lateral t wave changes", "present")]


@pytest.mark.parametrize("statement, name", [("t wave inversion, diffuse leads", "diffuse t wave inversion"),
                                             ("flat t waves, diffuse leads", "diffuse flat t waves"),
                                             ("t wave inversion, lateral leads", "lateral t wave inversion"),
                                             ("flat t waves, anterolateral leads", "anterolateral flat t waves")])
def test_lead_regions_after_a_comma_qualify_the_finding_before(statement, name):
    (e,) = statement_entities(statement)
    assert e["name"] == name and "lead" not in e["name"]
    assert one("t wave inversion, lateral leads")["qualifiers"]["leads"] == ["i", "avl", "v5", "v6"]


def test_report_labels_and_remarks_are_dropped():
    assert names("summary: abnormal ecg") == []
    assert names("summary: normal ecg") == [("normal ecg", "present")]
    assert names("normal ecg except for rate") == [("normal ecg", "present")]
    assert names("possible faulty v3 - omitted from analysis") == []


def test_wpw_and_second_degree_block_types_are_single_entities():
    assert names("ventricular pre-excitation, wpw pattern type a") == [
        ("ventricular pre-excitation", "present"), ("wolff-parkinson-white pattern", "present")]
    assert names("sinus rhythm with 2nd degree a-v block, mobitz ii") == [
        ("sinus rhythm", "present"), ("second degree av block mobitz ii", "present")]
    e = statement_entities("sinus rhythm with 2nd degree a-v block, mobitz i (wenckebach)")[1]
    assert e["name"] == "second degree av block mobitz i" and e["text"] == "2nd degree a-v block, mobitz i (wenckebach)"


@pytest.mark.parametrize("statement", ["pvc", "pvc(s)", "premature ventricular contraction", "premature ventricular complexes",
                                       "ventricular premature complex", "ventricular premature beats", "vpcs"])
def test_premature_ventricular_beats_have_one_name(statement):
    assert names(statement) == [("premature ventricular complex", "present")]


@pytest.mark.parametrize("statement", ["pac(s)", "premature atrial contractions", "atrial premature complex",
                                       "atrial premature beat", "premature atrial complexes"])
def test_premature_atrial_beats_have_one_name(statement):
    assert names(statement) == [("premature atrial complex", "present")]


def test_voltage_criteria_keep_their_hypertrophy_and_normal_variant_is_a_comment():
    e = one("minimal voltage criteria for lvh, may be normal variant")
    assert (e["name"], e["polarity"], e["qualifiers"]["severity"]) == (
        "voltage criteria for left ventricular hypertrophy", "present", "minimal")
    assert one("moderate voltage criteria for lvh, may be normal variant")["qualifiers"]["severity"] == "moderate"
    assert names("voltage criteria for left ventricular hypertrophy") == [("voltage criteria for left ventricular hypertrophy", "present")]


def test_other_general_mimic_wording():
    assert names("irregular sinus bradycardia") == [("irregular sinus bradycardia", "present")]
    assert names("strongly suggests myocardial infarction") == [("myocardial infarction", "uncertain")]
    assert names("anteroseptal st depression is probably reciprocal to inferior infarct") == [
        ("anteroseptal st depression", "present"), ("inferior infarct", "uncertain")]
    assert names("a-flutter/fibrillation w/ complete av block") == [
        ("atrial flutter", "present"), ("atrial fibrillation", "present"), ("complete av block", "present")]
    assert names("anterior st-t changes suggest myocardial injury/ischemia")[1:] == [
        ("myocardial injury", "uncertain"), ("myocardial ischemia", "uncertain")]
    assert names("this may be due to lv strain or ischaemia") == [("left ventricular strain", "uncertain"), ("ischemia", "uncertain")]
    assert all("rate min" not in n for n, _ in names("junctional bradycardia rate 41/min"))  # units borrow no head
    assert one("probable anterolateral infarct, age indeterm")["qualifiers"]["acuity"] == "age undetermined"
    assert names("i.v. conduction defect of left bundle branch block type") == [
        ("conduction defect of left bundle branch block type", "present")]


_JUNK = {"inferior", "lateral", "anterior", "septal", "anteroseptal", "posterior", "summary", "type", "strongly",
         "irregular", "slow", "fast", "diffuse lead", "diffuse leads", "except for rate", "normal variant", "faulty"}


@pytest.mark.fixtures
@pytest.mark.skipif(not MIMIC.exists(), reason=f"no MIMIC statements at {MIMIC}")
def test_no_junk_entities_on_real_mimic_statements():
    got = {e["name"]: s for s in pd.read_csv(MIMIC).statement for e in statement_entities(s)}
    junk = {n: s for n, s in got.items() if n in _JUNK or n.endswith((" are nonspecific", " is nonspecific")) or n.startswith(("some ", "strongly ", "although ", "mobitz"))}
    assert not junk, junk
