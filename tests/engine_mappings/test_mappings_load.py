"""Loading mappings: every problem is found at start, named by file and key, all at once."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from bridge.engine.mappings import MappingSet
from bridge.errors import ConfigError, ConfigProblem
from tests.engine_mappings.support import (
    PACKAGED,
    SHIPPED,
    Edit,
    replace_in,
    synthetic_context,
)


def _remove(relative: str) -> Edit:
    def edit(site: Path) -> None:
        target = site / relative
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()

    return edit


def _append(relative: str, text: str) -> Edit:
    def edit(site: Path) -> None:
        with (site / relative).open("a", encoding="utf-8") as handle:
            handle.write(text)

    return edit


def _write(relative: str, text: str) -> Edit:
    def edit(site: Path) -> None:
        (site / relative).parent.mkdir(parents=True, exist_ok=True)
        (site / relative).write_text(text, encoding="utf-8")

    return edit


@dataclass(frozen=True)
class LoadCase:
    label: str
    edit: Callable[[Path], None]
    source: str  # the end of the problem's source path
    key: str
    reason: str  # a piece of the reason


LOAD_CASES = [
    LoadCase(
        "unknown field",
        replace_in("es/reminder.toml", '"appointment.location"]', '"appointment.room"]'),
        "es/reminder.toml",
        "parameters.body[3]",
        "unknown field appointment.room",
    ),
    LoadCase(
        "too few parameters for the declared template",
        replace_in(
            "en/confirmed.toml", '["appointment.date", "appointment.time"]', '["appointment.date"]'
        ),
        "en/confirmed.toml",
        "parameters.body",
        "1 parameter(s) but the template's body has 2",
    ),
    LoadCase(
        "a template text with a gap in its placeholders",
        replace_in("es/cancelled.toml", "a las {{2}}", "a las {{3}}"),
        "es/cancelled.toml",
        "template.body",
        "without gaps",
    ),
    LoadCase(
        "too few button parameters",
        replace_in("es/reminder.toml", ', { payload = "cancel" }', ""),
        "es/reminder.toml",
        "parameters.buttons",
        "2 button parameter(s) but the template has 3",
    ),
    LoadCase(
        "a quick reply without payload",
        replace_in("en/reminder.toml", '{ payload = "confirm" }', '{ text = "portal.token" }'),
        "en/reminder.toml",
        "parameters.buttons[0].text",
        "unknown key",
    ),
    LoadCase(
        "missing language folder",
        _remove("en"),
        "mappings/en",
        "(folder)",
        "missing language",
    ),
    LoadCase(
        "missing kind in the default language",
        _remove("es/survey.toml"),
        "es/survey.toml",
        "(file)",
        "missing kind 'survey'",
    ),
    LoadCase(
        "missing meta language code",
        replace_in("es/results.toml", 'language = "es"\n', ""),
        "es/results.toml",
        "template.language",
        "required",
    ),
    LoadCase(
        "a meta language code in the wrong form",
        replace_in("en/results.toml", 'language = "en_US"', 'language = "en-US"'),
        "en/results.toml",
        "template.language",
        "exact code",
    ),
    LoadCase(
        "sensitive service name in a template",
        replace_in("es/reminder.toml", '"appointment.location"]', '"appointment.service"]'),
        "es/reminder.toml",
        "parameters.body[3]",
        "appointment.service is marked sensitive",
    ),
    LoadCase(
        "sensitive department in a free text",
        replace_in("en/confirmed_text.toml", "{appointment.time}", "{appointment.department}"),
        "en/confirmed_text.toml",
        "body",
        "appointment.department is marked sensitive",
    ),
    LoadCase(
        "result data in a results notice",
        replace_in("en/results.toml", '["patient.first_name"]', '["result.status"]'),
        "en/results.toml",
        "parameters.body[0]",
        "result data",
    ),
    LoadCase(
        "a diagnosis in a fallback",
        _append("es/reminder.toml", '\n[fallbacks]\n"patient.diagnosis" = "x"\n'),
        "es/reminder.toml",
        'fallbacks."patient.diagnosis"',
        "sensitive",
    ),
    LoadCase(
        "a slot field outside slot rows",
        replace_in("es/confirmed_text.toml", "{appointment.time}", "{slot.time}"),
        "es/confirmed_text.toml",
        "body",
        "slot rows",
    ),
    LoadCase(
        "a stray brace",
        replace_in("en/help_ack.toml", "We got", "We {got"),
        "en/help_ack.toml",
        "body",
        "unbalanced brace",
    ),
    LoadCase(
        "a button title over 20 characters",
        replace_in("es/cancel_question.toml", '"No, mantener"', '"No, mantener mi cita por favor"'),
        "es/cancel_question.toml",
        "buttons[1].title",
        "limit of 20",
    ),
    LoadCase(
        "a list button label over 20 characters",
        replace_in("en/slot_list.toml", '"See times"', '"See all available times"'),
        "en/slot_list.toml",
        "button",
        "limit of 20",
    ),
    LoadCase(
        "a kind sent as the wrong type",
        replace_in("es/cancel_question.toml", 'type = "buttons"', 'type = "text"'),
        "es/cancel_question.toml",
        "type",
        "cancel_question is sent as buttons",
    ),
    LoadCase(
        "a misspelt key",
        replace_in("en/no_slots.toml", "body =", "bodi ="),
        "en/no_slots.toml",
        "bodi",
        "unknown key",
    ),
    LoadCase(
        "a file for an unknown kind",
        _write("es/reminders.toml", 'type = "text"\nbody = "x"\n'),
        "es/reminders.toml",
        "(file)",
        "unknown message kind 'reminders'",
    ),
    LoadCase(
        "broken TOML",
        _write("en/optin_ack.toml", 'type = "text"\nbody = "unterminated\n'),
        "en/optin_ack.toml",
        "(file)",
        "not valid TOML",
    ),
    LoadCase(
        "an unknown locale",
        replace_in("site.toml", 'locale = "en_US"', 'locale = "xx_QQ"'),
        "site.toml",
        "languages.en.locale",
        "unknown locale",
    ),
    LoadCase(
        "a default language that is not declared",
        replace_in("site.toml", 'default_language = "es"', 'default_language = "pt"'),
        "site.toml",
        "default_language",
        "'pt' is not declared",
    ),
    LoadCase(
        "a language folder not declared in site.toml",
        _write("pt/reminder.toml", 'type = "text"\nbody = "x"\n'),
        "mappings/pt",
        "(folder)",
        "not declared",
    ),
    LoadCase(
        "a date format babel cannot use",
        replace_in("es/confirmed_text.toml", 'type = "text"', 'type = "text"\ntime_format = 3'),
        "es/confirmed_text.toml",
        "time_format",
        "non-empty string",
    ),
    LoadCase(
        "one template declared two ways",
        replace_in("en/results.toml", 'name = "results_ready"', 'name = "appointment_confirmed"'),
        "en/results.toml",
        "template",
        "declared differently",
    ),
]


def _problems(site: Path, **kwargs: object) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as caught:
        MappingSet.load(site, **kwargs)  # type: ignore[arg-type]
    return caught.value.problems


def _has(problems: list[ConfigProblem], case: LoadCase) -> bool:
    return any(
        p.source.endswith(case.source) and p.key == case.key and case.reason in p.reason
        for p in problems
    )


class TestLoadErrors:
    @pytest.mark.parametrize("case", LOAD_CASES, ids=lambda c: c.label)
    def test_a_broken_site_is_refused_naming_the_file_and_key(
        self, site: Path, case: LoadCase
    ) -> None:
        case.edit(site)

        problems = _problems(site)

        assert _has(problems, case), "\n".join(str(p) for p in problems)

    def test_every_problem_is_listed_at_once(self, site: Path) -> None:
        # Given one problem in each of several files
        labels = {
            "unknown field",
            "too few parameters for the declared template",
            "sensitive department in a free text",
            "result data in a results notice",
            "a button title over 20 characters",
            "a misspelt key",
        }
        cases = [case for case in LOAD_CASES if case.label in labels]
        for case in cases:
            case.edit(site)

        # When the folder is loaded
        problems = _problems(site)

        # Then one error lists them all, and its message names every file
        assert all(_has(problems, case) for case in cases)
        with pytest.raises(ConfigError) as caught:
            MappingSet.load(site)
        for case in cases:
            assert case.source in str(caught.value)

    def test_a_missing_folder_is_a_config_error(self, tmp_path: Path) -> None:
        problems = _problems(tmp_path / "nowhere")

        assert problems[0].key == "(folder)"


class TestSensitiveFields:
    def test_a_site_may_allow_the_service_name(self, site: Path) -> None:
        replace_in("es/reminder.toml", '"appointment.location"]', '"appointment.service"]')(site)

        mappings = MappingSet.load(site, allow_sensitive={"appointment.service"})
        _, content = mappings.render("reminder", "es", synthetic_context())

        assert content["body"][3] == "Medicina general"

    def test_result_data_stays_refused_even_when_a_site_allows_it(self, site: Path) -> None:
        replace_in("en/results.toml", '["patient.first_name"]', '["result.status"]')(site)

        problems = _problems(site, allow_sensitive={"result.status", "result.*"})

        assert any(p.key == "parameters.body[0]" and "result data" in p.reason for p in problems)

    def test_a_site_may_mark_more_fields_sensitive(self, site: Path) -> None:
        problems = _problems(site, sensitive_fields={"appointment.location"})

        flagged = {
            Path(p.source).parent.name + "/" + Path(p.source).name
            for p in problems
            if "sensitive" in p.reason
        }
        # the reminders use it, and site.toml gives it a fallback text
        assert flagged == {"es/reminder.toml", "en/reminder.toml", "mappings/site.toml"}

    def test_the_first_name_is_usable_although_patient_fields_are_sensitive(
        self, mappings: MappingSet
    ) -> None:
        _, content = mappings.render("results", "es", synthetic_context())

        assert content["body"] == ["Ana"]


class TestPackagedCopy:
    def test_the_packaged_default_mappings_are_identical_to_the_repository_folder(self) -> None:
        """An installed wheel must send what the repository's mappings/ says."""

        def files(root: Path) -> dict[str, bytes]:
            return {
                str(path.relative_to(root)): path.read_bytes()
                for path in sorted(root.rglob("*"))
                if path.is_file() and "__pycache__" not in path.parts
            }

        shipped, packaged = files(SHIPPED), files(PACKAGED)

        assert sorted(shipped) == sorted(packaged)
        assert shipped == packaged
        assert "site.toml" in shipped

    def test_the_repository_folder_loads_like_the_packaged_one(self) -> None:
        repo, packaged = MappingSet.load(SHIPPED), MappingSet.default()

        assert repo.template_specs() == packaged.template_specs()
        assert repo.languages() == packaged.languages()
