"""alignsmith: Hub-integrated dataset and model builder for data-efficient alignment.

The core package holds everything the stages share (records, recipes, the embedded Hub,
publishing and cards, model loading). Stage packages (`builders`, `training`, `evaluation`,
`spaces`) import only this package, never each other: they talk through the Hub.
"""

__version__ = "0.1.0"
