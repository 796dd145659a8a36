"""Written by setup.py at build time: the sources the compiled core was built from."""

SOURCES = {
    "engine": "a3b710055026e78e6e8c59d02162d60e72b1867bb503da86b02778053da75f7a",
    "health": "bac3a84a08044add57b8fba169862c8d3981976491d4efcd5eb919271ce91aad",
    "plan": "6d93a75564a6b8612d86c784b9e4aa81aee391154de0710f3d30c158c28585d0",
}
