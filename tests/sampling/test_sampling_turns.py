"""``continue_turns`` against a scripted environment and model: which rows go on, what each turn
appends, the student mask, the log-probs, the turn counts, and the calls made."""

import numpy as np

from opd_jax.sampling.turns import continue_turns, last_turn, sample_row_ids, student_tokens, student_turns


def test_rows_go_on_while_their_turns_end_and_the_environment_has_turns_left():
    prompts = [(1,), (2,), (3,), (4,)]
    comp = [[10, 99], [11], [12, 99], [13, 99]]  # 99 ends a turn: row 1 was cut off
    logp = [[-1.0, -2.0], [-1.0], [-1.0, -2.0], [-1.0, -2.0]]
    ended = np.array([True, False, True, True])
    env = [((50,), (51, 52)), ((50,),), (), ((50,),)]  # row 2 has no environment turns
    calls, asked = [], []

    def respond(rows, owns):  # the records' turns, one per student turn so far
        asked.extend((r, [list(t) for t in own]) for r, own in zip(rows, owns))
        return [env[r][len(own) - 1] if len(own) <= len(env[r]) else None for r, own in zip(rows, owns)]

    def next_turn(seqs, t):
        calls.append((t, [tuple(s) for s in seqs]))
        # row 0 ends both later turns; row 3 is cut off in turn 2
        new = [[20 + t, 99], [70], [71], [30 + t]]
        return new, [[-0.5] * len(x) for x in new], np.array([True, True, True, False])
    comp, logp, student, last, taken = continue_turns(prompts, comp, logp, ended, respond, 3, next_turn)
    assert comp[0] == [10, 99, 50, 22, 99, 51, 52, 23, 99]
    assert comp[1] == [11] and comp[2] == [12, 99]  # cut off / no environment turn: over
    assert comp[3] == [13, 99, 50, 32]  # cut off in turn 2: no third turn
    assert student[0] == [True, True, False, True, True, False, False, True, True]
    assert logp[0] == [-1.0, -2.0, 0.0, -0.5, -0.5, 0.0, 0.0, -0.5, -0.5]
    assert taken.tolist() == [3, 1, 1, 2] and last.tolist() == [True, False, True, False]
    assert student_tokens(comp, student)[0] == [10, 99, 22, 99, 23, 99]
    # each call gets every row's episode so far (rows that are over are sampled and ignored)
    assert [t for t, _ in calls] == [2, 3]
    assert calls[0][1][0] == (1, 10, 99, 50) and calls[0][1][1] == (2, 11)
    assert calls[1][1][0] == (1, 10, 99, 50, 22, 99, 51, 52)
    # the environment is asked about rows whose last turn ended, with that row's own turns
    assert asked == [(0, [[10, 99]]), (2, [[12, 99]]), (3, [[13, 99]]), (0, [[10, 99], [22, 99]])]


def test_no_call_when_no_row_can_go_on():
    def never(seqs, t):
        raise AssertionError("no row goes on, so nothing is sampled")
    def always(rows, owns):
        return [(7,)] * len(rows)
    comp, logp, student, last, taken = continue_turns([(1,)], [[5]], [[-1.0]], np.array([False]),
                                                      always, 4, never)
    assert comp == [[5]] and taken.tolist() == [1] and student == [[True]]
    # another host's rows may go on: every host then makes the call
    calls = []
    continue_turns([(1,)], [[5]], [[-1.0]], np.array([False]), always, 2,
                   lambda s, t: calls.append(t) or ([[6]], [[-1.0]], np.array([True])),
                   anywhere=lambda flag: True)
    assert calls == [2]


def test_sample_row_ids_are_the_samplers_per_sample_streams():
    assert sample_row_ids([5, 9], 3).tolist() == [15, 16, 17, 27, 28, 29]  # row_ids[b] * n + j
    assert sample_row_ids(np.array([4]), 1).dtype == np.int32


def test_student_turns_are_the_runs_of_student_tokens_and_the_last_is_the_answer():
    tokens = [10, 99, 50, 22, 99, 51, 23, 0, 0]
    student = [True, True, False, True, True, False, True, False, False]  # padding after
    assert student_turns(tokens, student) == [[10, 99], [22, 99], [23]]
    assert student_turns([50, 10], [False, True]) == [[10]] and student_turns([0], [False]) == []
    assert last_turn(tokens, student) == [23]
    assert last_turn(tokens[:5], student[:5]) == [22, 99]
    assert last_turn([10, 99], [True, True]) == [10, 99] and last_turn([0], [False]) == []
