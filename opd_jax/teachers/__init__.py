"""Teachers behind one interface (:class:`Teacher`), one class per ``teacher.kind``.

- ``"model"``: a separate local model (:class:`ModelTeacher`);
- ``"models"``: several local models, routed per record or mixed (:class:`RoutedTeacher`);
- ``"self"``: the student's current weights (:class:`SelfTeacher`);
- ``"ema"``: an exponential moving average of the student (:class:`EMATeacher`);
- ``"initial"``: the student's initial weights (:class:`InitialTeacher`);
- ``"served"``: a model behind an inference server (:class:`ServedTeacher`), sparse top-k;
- ``"cross_tokenizer"``: a model with its own tokenizer, local or served
  (:class:`CrossTokenizerTeacher`), its log-probs moved onto the student's tokens over the text
  spans both tokenizations share (or, for ``objective=simct``, its distribution over the tokens
  both vocabularies share, at each span's start).

Any of them can be built beside a reference policy, the student's initial weights
(:class:`WithReference`), for objectives that read its log-probs (``stable_opd``); a local
one-model teacher can also look one step ahead of the student's candidate tokens
(:class:`WithLookahead`, for ``lgr``), and so can a served one (:class:`ServedLookahead`).
"""

from opd_jax.teachers.aligned import CrossTokenizerTeacher
from opd_jax.teachers.base import Runtime, Student, Teacher
from opd_jax.teachers.build import KINDS, build_teacher, teacher_class
from opd_jax.teachers.local import EMATeacher, InitialTeacher, ModelTeacher, SelfTeacher
from opd_jax.teachers.lookahead import ServedLookahead, WithLookahead
from opd_jax.teachers.reference import WithReference
from opd_jax.teachers.routed import RoutedTeacher
from opd_jax.teachers.served import ServedTeacher, TeacherServerError

__all__ = ["CrossTokenizerTeacher", "EMATeacher", "InitialTeacher", "KINDS", "ModelTeacher",
           "RoutedTeacher", "Runtime", "SelfTeacher", "ServedLookahead", "ServedTeacher", "Student",
           "Teacher", "TeacherServerError", "WithLookahead", "WithReference", "build_teacher",
           "teacher_class"]
