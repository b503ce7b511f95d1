"""A tour of podfn: run with `podfn demo` (or `podfn dev` in another terminal)."""

import podfn
from podfn import remote


@remote(cpu="250m", memory="256Mi", timeout=60)
def add(a, b):
    return a + b


class NotPositive(ValueError):
    pass


@remote(memory="256Mi")
def check(x):
    if x <= 0:
        raise NotPositive(f"{x} is not positive")
    return x


@remote(timeout=1)
def slow():
    import time

    time.sleep(30)


def main() -> None:
    print("add.remote(2, 3)                 ->", add.remote(2, 3))
    call = add.spawn(4, 5)
    print("add.spawn(4, 5)                  ->", call)
    print("Call.from_id(call.id).result()   ->", podfn.Call.from_id(call.id).result())
    print("list(add.map([1,2,3], [10,20,30])) ->", list(add.map([1, 2, 3], [10, 20, 30])))
    try:
        check.remote(-1)
    except NotPositive as exc:
        print("check.remote(-1) raised           ->", repr(exc), "(remote traceback chained)")
    try:
        slow.remote()
    except podfn.CallTimeout as exc:
        print("slow.remote() with timeout=1     ->", type(exc).__name__ + ":", exc)


if __name__ == "__main__":
    main()
