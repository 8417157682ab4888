"""The `readmit_charge` catalogue (`kvsaga.scheduler.readmit_charges`) against the values
the scheduler accepts and its default."""

import inspect

import pytest

from kvsaga.scheduler import readmit_charges
from kvsaga.scheduler.workflow import WorkflowScheduler
from kvsaga.scheduler.working_set_gate import READMIT_CHARGES


def test_every_accepted_value_is_described_and_only_those():
    assert set(readmit_charges.DESCRIPTIONS) == set(READMIT_CHARGES)
    assert len(READMIT_CHARGES) == len(set(READMIT_CHARGES))
    for value, text in readmit_charges.DESCRIPTIONS.items():
        assert text.strip(), value


def test_the_default_named_in_the_catalogue_is_the_schedulers():
    default = inspect.signature(WorkflowScheduler).parameters["readmit_charge"].default
    assert default == readmit_charges.DEFAULT
    # Exactly one description claims to be the default, and it is the default's.
    claims = [v for v, text in readmit_charges.DESCRIPTIONS.items()
              if text.endswith("the default)")]
    assert claims == [default]
    assert default in WorkflowScheduler.__doc__


def test_describe_names_the_bad_value():
    assert readmit_charges.describe("full").startswith("its whole context")
    with pytest.raises(ValueError, match="'roomy'"):
        readmit_charges.describe("roomy")
