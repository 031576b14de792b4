"""The Gradio app's rooms: `page` builds the page (`build_demo`) from the tabs; `app.py` is its
command line.

Tabs (`showcase/tabs/`, one module each, with its layout and handlers; a tab imports the services
below, never another tab): `compare` (the race on a clip), `live`, `checks` (Component tests),
`benchmarks`, `system`.

Services:
- `transcriptions`: the one seam where the compare and Live tabs get transcriptions (the
  `Transcriptions` protocol; `LocalTranscriptions`, models loaded in this process; `remote`, over
  the transcription service);
- `models`: transcribers loaded once and warmed up (`ModelCache`), the compile cache's folder;
- `turns`: one transcription at a time, each waiter told its place;
- `comparison`: one race on a clip, in rounds, and `watch`, which reports it as it goes;
  `cpu_load`: how much of the CPU other work took during a run;
- `verdict`, `charts`, `results` (the committed benchmark results), `formatting`, `audio_checks`;
- `choices` (the models, implementations and devices offered here), `views` (what a tab hands the
  page to refresh).
"""
