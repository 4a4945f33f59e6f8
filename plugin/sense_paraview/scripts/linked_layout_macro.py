"""ParaView macro "SENSE Linked Layout": the scatter | members layout for the active source.

Add it once with *Macros > Import new macro...* (it then sits in the Macros menu and toolbar).
With a SENSE Embedding selected in the Pipeline Browser it lays out that embedding; with an
ensemble (a SENSE reader, a .vtm/.pvd reader) it first adds a SENSE Embedding with the default
bundle. The active render view is split: scatter on the left, the selected members on the right,
linked live. SENSE Embedding already does this on its first Apply; the macro brings the layout
back after its views were closed, or for an embedding made with LinkedLayout off.
"""

import paraview.simple as simple

from sense_paraview import show_linked_layout

_source = simple.GetActiveSource()
if _source is None:
    raise RuntimeError("SENSE Linked Layout: select an ensemble or a SENSE Embedding first")
if _source.SMProxy.GetXMLName() == "SENSEEmbedding":
    _embedding, _ensemble = _source, _source.Input
else:
    _embedding, _ensemble = simple.SENSEEmbedding(Input=_source, LinkedLayout=0), _source
_view = simple.GetActiveView()
SENSE_LINKED_LAYOUT = show_linked_layout(
    _ensemble,
    embedding=_embedding,
    scatter_view=_view if _view is not None and _view.GetXMLName() == "RenderView" else None,
)
simple.Render(SENSE_LINKED_LAYOUT.scatter_view)
simple.Render(SENSE_LINKED_LAYOUT.members_view)
