"""The exceptions and warnings that gptclassifier raises for its users."""


class GptClassifierError(Exception):
    """A problem the user can fix; the command line prints it as one sentence."""


class DataError(GptClassifierError):
    """A data file or data frame that cannot be used as it is."""


class DownloadError(GptClassifierError):
    """A file that could not be downloaded intact from any of its addresses."""


class ConfigError(GptClassifierError):
    """An unknown profile, option or setting."""


class FallbackWarning(UserWarning):
    """Real data or weights were unavailable, so a stand-in is used instead."""
