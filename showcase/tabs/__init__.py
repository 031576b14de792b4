"""One module per tab, each with its layout and handlers; a tab imports the services of `showcase`,
never another tab."""
