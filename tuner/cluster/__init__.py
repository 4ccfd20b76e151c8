"""The cluster: `ray up` configs checked offline (`config`, `python -m tuner.cluster FILE`), what a
cluster holds (`capacity`, plain), where it answers (`address`, plain) and joining it (`connect`,
the only module here that imports Ray at its top)."""
