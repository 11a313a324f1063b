"""The alignsmith results Space: models next to their evaluation results, all read from the Hub.

Runs the same on huggingface.co (the clients' default Hub) and locally (``HF_ENDPOINT`` set to
another Hub); ``space.yaml`` next to this file says what to show.
"""

from spaces.space_app import main

if __name__ == "__main__":
    main()
