"""placeholder"""

ID, KEY, TITLE = (
    {"projection": 5, "lag": 6, "rebuild": 8, "point_queries": 7, "memory": 9}["projection"],
    "projection",
    "projection",
)


async def run(ctx, result):
    result.notes.append("not implemented yet")
