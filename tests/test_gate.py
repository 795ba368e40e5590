"""``BatchGate`` (generator_server/gate.py): requests of one kind share the engine, another kind
waits; a kind of its own (``object()``, as the server's probe uses) runs with nothing beside it."""

import asyncio

from generator_server.gate import BatchGate


def run_requests(kinds: list[object]) -> list[list[object]]:
    """Start one request per kind in order, each holding the gate for a few event-loop turns; the
    kinds inside the gate at each entry."""
    gate, inside, seen = BatchGate(), [], []

    async def request(kind: object) -> None:
        async with gate.admit(kind):
            inside.append(kind)
            seen.append(list(inside))
            for _ in range(3):
                await asyncio.sleep(0)
            inside.remove(kind)

    async def main() -> None:
        await asyncio.gather(*(request(kind) for kind in kinds))

    asyncio.run(main())
    return seen


def test_one_kind_shares_the_gate_and_another_kind_waits():
    seen = run_requests([None, None, 7, None])
    assert seen[:2] == [[None], [None, None]]  # the two base-model requests together
    assert [7] in seen  # version 7 alone, after them
    assert all(len(set(entry)) == 1 for entry in seen)  # never two kinds inside at once


def test_a_kind_of_its_own_runs_with_nothing_beside_it():
    alone = object()
    seen = run_requests([None, None, alone, None, None])
    assert [alone] in seen
    assert all(entry == [alone] for entry in seen if alone in entry)
