"""The study's reports (`voicegate report eda|uncertainty|interpret|params`) and their shared helpers."""
