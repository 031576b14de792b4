"""The Gradio app: `page` builds the page (`build_demo`) from the tabs in `showcase/tabs/`, one
module each, which import the services beside this file but never another tab. Tabs transcribe
only through `transcriptions.Transcriptions` (models in this process, or `remote`: the service's
deployments). The layout: docs/architecture.md."""
