"""The Gradio app's rooms; `app.py` builds the page from the tabs.

Tabs (`showcase/tabs/`, one module each, with its layout and handlers; a tab imports the services
below, never another tab): `compare` (Transcribe & compare), `live`, `checks` (Component tests),
`benchmarks`, `system`.

Services:
- `transcriptions`: the one seam where the compare and Live tabs get transcriptions (the
  `Transcriptions` protocol; `LocalTranscriptions`, models loaded in this process);
- `models`: transcribers loaded once and warmed up (`ModelCache`), the compile cache's folder;
- `turns`: one transcription at a time, each waiter told its place;
- `comparison`: one Transcribe & compare request, and `watch`, which reports its progress;
- `charts`, `headlines`, `results` (the committed benchmark results), `formatting`, `audio_checks`;
- `choices` (the models, implementations and devices offered here), `views` (what a tab hands the
  page to refresh).
"""
