"""The one place that maps ``teacher.kind`` to the class of its teacher."""

import opd_jax.objectives as O
from opd_jax.teachers.aligned import CrossTokenizerTeacher
from opd_jax.teachers.base import Runtime, Student, Teacher
from opd_jax.teachers.local import EMATeacher, InitialTeacher, ModelTeacher, SelfTeacher
from opd_jax.teachers.lookahead import ServedLookahead, WithLookahead
from opd_jax.teachers.reference import WithReference
from opd_jax.teachers.routed import RoutedTeacher
from opd_jax.teachers.served import ServedTeacher

KINDS: dict[str, type[Teacher]] = {
    "model": ModelTeacher, "models": RoutedTeacher, "self": SelfTeacher, "ema": EMATeacher,
    "initial": InitialTeacher, "served": ServedTeacher, "cross_tokenizer": CrossTokenizerTeacher,
}


def teacher_class(spec) -> type[Teacher]:
    """The class of ``spec.kind``'s teacher (its ``refusals`` can be read before building it)."""
    if spec.kind not in KINDS:
        raise ValueError(f"unknown teacher.kind {spec.kind!r}; known: {sorted(KINDS)}")
    return KINDS[spec.kind]


def build_teacher(spec, student: Student, mesh, runtime: Runtime, objective=None) -> Teacher:
    """The teacher of ``spec`` (a resolved :class:`~opd_jax.training.config.TeacherSpec`): its
    models loaded onto ``mesh`` (or its server reached) and checked against the student's
    vocabulary and tokenizer. For an ``objective`` that reads a reference policy's log-probs,
    beside a frozen copy of the student's initial weights that adds them to every scored batch
    (:class:`WithReference`); for ``lgr``, scored with look-ahead branches (:class:`WithLookahead`;
    a served teacher: :class:`ServedLookahead`)."""
    teacher = teacher_class(spec).from_spec(spec, student, mesh, runtime)
    if isinstance(objective, O.LGRConfig):
        teacher = ServedLookahead(teacher, student, objective, runtime) if spec.kind == "served" \
            else WithLookahead(teacher, student, objective)
    if objective is not None and O.REF_LOGP in O.required_inputs(objective):
        teacher = WithReference(teacher, student, runtime)
    return teacher
