"""How the assets present themselves in the Dagster catalog: their owners and links to their code.

Applied once, where the definitions are built, so the asset modules stay free of it. Asset
checks carry no owners of their own in Dagster (``AssetCheckSpec`` has no such field); the UI
shows them on their asset's page, under the asset's owners.
"""

import inspect
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import dagster as dg

import hardening_pipeline
from hardening_pipeline.settings import DagsterCatalogSettings

AssetLike = dg.AssetsDefinition | dg.AssetSpec

# Code links are made from the installed package's files; this pair maps a file's local path
# to its path in the repository, the same whether the package runs from a checkout or a wheel.
_PACKAGE_ANCHOR = Path(hardening_pipeline.__file__)
_PACKAGE_ANCHOR_IN_REPOSITORY = "hardening_pipeline/__init__.py"


def _code_reference(
    code: Callable, settings: DagsterCatalogSettings, mapping: dg.FilePathMapping
) -> dg.CodeReferencesMetadataValue:
    """Where ``code`` is: a file and line, or its page on git when a URL is set."""
    _, line = inspect.getsourcelines(code)
    reference = dg.LocalFileCodeReference(
        file_path=str(inspect.getsourcefile(code)), line_number=line
    )
    if settings.git_url:
        # link_code_references_to_git converts the references of assets defined by a function
        # and leaves a bare spec as it is; this is its link layout, for the one reference here.
        tree = "/-/tree/" if settings.git_platform == "gitlab" else "/tree/"
        path = mapping.convert_to_source_control_path(Path(reference.file_path))
        reference = dg.UrlCodeReference(
            url=f"{settings.git_url.rstrip('/')}{tree}{settings.git_branch}/{path}#L{line}"
        )
    return dg.CodeReferencesMetadataValue(code_references=[reference])


def catalog_assets(
    assets: Sequence[AssetLike],
    settings: DagsterCatalogSettings,
    code_of: Mapping[dg.AssetKey, Callable] | None = None,
) -> list[AssetLike]:
    """``assets`` with ``settings.owners`` and code references (to git when a URL is set).

    Dagster links an asset defined by a function to that function; a bare ``AssetSpec`` (an
    external asset such as ``slack_failure_alerts``) is linked to its entry in ``code_of``,
    the function that records its events.
    """
    owned = dg.map_asset_specs(
        lambda spec: spec.replace_attributes(owners=list(settings.owners)), assets
    )
    code_of = code_of or {}
    # The code-reference helpers are marked beta; their warning would otherwise print on
    # every `dagster` command.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        mapping = dg.AnchorBasedFilePathMapping(
            local_file_anchor=_PACKAGE_ANCHOR,
            file_anchor_path_in_repository=_PACKAGE_ANCHOR_IN_REPOSITORY,
        )
        owned = [
            item.merge_attributes(
                metadata={
                    "dagster/code_references": _code_reference(code_of[item.key], settings, mapping)
                }
            )
            if isinstance(item, dg.AssetSpec) and item.key in code_of
            else item
            for item in owned
        ]
        linked = dg.with_source_code_references(owned)
        if settings.git_url:
            linked = dg.link_code_references_to_git(
                linked,
                git_url=settings.git_url,
                git_branch=settings.git_branch,
                file_path_mapping=mapping,
                platform=settings.git_platform,
            )
    return list(linked)
