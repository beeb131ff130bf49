"""Meta-World v3 task sets and a natural-language instruction for every one of its 50 tasks.

The instruction names what the camera shows (object, colour where it helps, and the goal marker) so that the
image and the instruction together determine the task.
"""

from __future__ import annotations

from repwam.errors import RepwamError

INSTRUCTIONS: dict[str, str] = {
    "assembly-v3": "pick up the green ring by its handle and put it down over the red peg",
    "basketball-v3": "pick up the basketball and drop it into the hoop",
    "bin-picking-v3": "pick the green cube out of the left bin and place it in the right bin",
    "box-close-v3": "pick up the box lid and put it on top of the box",
    "button-press-topdown-v3": "press the red button down from above",
    "button-press-topdown-wall-v3": "reach over the wall and press the red button down from above",
    "button-press-v3": "push the red button in from the front",
    "button-press-wall-v3": "reach around the wall and push the red button in from the front",
    "coffee-button-v3": "press the button on the front of the coffee machine",
    "coffee-pull-v3": "pull the coffee mug back out from under the coffee machine to the goal",
    "coffee-push-v3": "push the coffee mug forward under the coffee machine",
    "dial-turn-v3": "turn the dial a quarter turn",
    "disassemble-v3": "lift the green ring by its handle off the red peg",
    "door-close-v3": "push the open door closed",
    "door-lock-v3": "turn the door lock down to lock the door",
    "door-open-v3": "pull the door open by its handle",
    "door-unlock-v3": "turn the door lock up to unlock the door",
    "hand-insert-v3": "slide the hand into the hole in the table at the goal",
    "drawer-close-v3": "push the drawer closed",
    "drawer-open-v3": "pull the drawer open by its handle",
    "faucet-open-v3": "rotate the faucet handle to the left to open it",
    "faucet-close-v3": "rotate the faucet handle to the right to close it",
    "hammer-v3": "pick up the hammer and hammer the nail into the box",
    "handle-press-side-v3": "press the handle down from the side",
    "handle-press-v3": "press the handle down",
    "handle-pull-side-v3": "pull the handle up from the side",
    "handle-pull-v3": "pull the handle up",
    "lever-pull-v3": "pull the lever up",
    "pick-place-wall-v3": "pick up the puck, lift it over the wall and place it at the blue goal",
    "pick-out-of-hole-v3": "pick the peg out of the hole and lift it to the goal",
    "pick-place-v3": "pick up the puck and place it at the blue goal in the air",
    "plate-slide-v3": "slide the plate forward into the goal",
    "plate-slide-side-v3": "slide the plate sideways into the goal",
    "plate-slide-back-v3": "slide the plate back toward the robot out of the goal",
    "plate-slide-back-side-v3": "slide the plate sideways back out of the goal",
    "peg-insert-side-v3": "pick up the peg and insert it sideways into the hole in the box",
    "peg-unplug-side-v3": "pull the peg sideways out of the hole",
    "soccer-v3": "push the soccer ball into the goal",
    "stick-push-v3": "grab the stick and use it to push the thermos to the goal",
    "stick-pull-v3": "grab the stick and use it to pull the thermos to the goal",
    "push-v3": "push the puck to the green goal",
    "push-wall-v3": "push the puck around the wall to the green goal",
    "push-back-v3": "pull the puck back toward the robot to the goal",
    "reach-v3": "move the gripper to the red goal",
    "reach-wall-v3": "reach over the wall to the red goal",
    "shelf-place-v3": "pick up the block and place it on the shelf",
    "sweep-into-v3": "sweep the block into the hole in the table",
    "sweep-v3": "sweep the block off the edge of the table",
    "window-open-v3": "slide the window open to the left",
    "window-close-v3": "slide the window closed to the right",
}

ALL_TASKS: list[str] = list(INSTRUCTIONS)

MT10: list[str] = [
    "reach-v3",
    "push-v3",
    "pick-place-v3",
    "door-open-v3",
    "drawer-open-v3",
    "drawer-close-v3",
    "button-press-topdown-v3",
    "peg-insert-side-v3",
    "window-open-v3",
    "window-close-v3",
]

TASK_SETS: dict[str, list[str]] = {"mt10": MT10, "mt50": ALL_TASKS, "all": ALL_TASKS}


def resolve_tasks(spec: str | list[str]) -> list[str]:
    """`mt10`, `mt50`/`all`, or task names (comma-separated or a list; the `-v3` suffix may be left off)."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    tasks: list[str] = []
    for item in (s.strip() for s in items):
        if not item:
            continue
        if item.lower() in TASK_SETS:
            tasks += TASK_SETS[item.lower()]
            continue
        name = item if item.endswith("-v3") else f"{item}-v3"
        if name not in INSTRUCTIONS:
            raise RepwamError(
                f"unknown Meta-World task {item!r}. Task sets: {', '.join(TASK_SETS)}; tasks: {', '.join(ALL_TASKS)}"
            )
        tasks.append(name)
    if not tasks:
        raise RepwamError(f"no tasks given (got {spec!r})")
    return list(dict.fromkeys(tasks))  # de-duplicate, keep order


def instruction(task: str) -> str:
    try:
        return INSTRUCTIONS[task]
    except KeyError:
        raise RepwamError(f"no instruction for task {task!r}") from None
