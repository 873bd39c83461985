"""The cats-vs-dogs scenario the local demo runs on embedded defaults."""
