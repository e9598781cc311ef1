"""The FastSAM3D effect's session lifecycle: heartbeat, and the server's sessions listed, resumed or closed.

A mixin of :class:`FastSAM3DLib.SegmentEditorEffect.SegmentEditorEffect` (it uses the effect's
``logic``, ``_start``, ``_forget``, ``statusLabel``, ``sessionBox`` and ``heartbeatTimer``).
"""

import slicer
from FastSAM3DLib.logic import Background, SessionGone
from FastSAM3DLib.views import world_ijk_to_ras


class SessionPanel:
    def _heartbeat(self):
        """Every HEARTBEAT_MS while a session is open: keep it from being closed as idle."""
        if self.beat is not None and self.beat.poll() and isinstance(self.beat.error, SessionGone):
            if self.pending is None:  # else the running request reports it
                self._forget()
                self.statusLabel.text = str(self.beat.error)
            self.beat = None
            return
        if self.logic is None or self.logic.session is None:
            self.heartbeatTimer.stop()
        elif self.beat is None or self.beat.poll():
            self.beat = Background(self.logic.heartbeat)

    def refreshSessions(self):
        if self.logic is not None:
            self._start(self.logic.sessions, self._listed, "listing the server's sessions…")

    def _listed(self, sessions):
        import time

        self.sessionBox.clear()
        for session in sessions:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(session.get("updated", 0)))
            state = "open" if session.get("open") else "saved"
            names = ", ".join(o["name"] for o in session.get("objects", []))
            text = f"{session.get('name', session['id'])} ({session.get('model')}, {when}, {state}): {names}"
            self.sessionBox.addItem(text, session["id"])
        self.statusLabel.text = f"{len(sessions)} sessions on the server"

    def resumeSession(self):
        """Continue the chosen session on the selected source volume: its objects become segments (by name)."""
        session_id = self.sessionBox.currentData
        volume, _ = self._selection()
        if self.logic is None or not session_id or volume is None:
            self.statusLabel.text = "connect, Refresh, choose a session and select its source volume"
            return
        shape = slicer.util.arrayFromVolume(volume).shape
        self._start(lambda: self.logic.resume(session_id, shape), lambda _: self._resumed(volume), "resuming…")

    def _resumed(self, volume):
        import numpy as np

        self.volume_node, self.ijk_to_ras, self.objects = volume, world_ijk_to_ras(volume), {}
        segmentation_node = self.scriptedEffect.parameterSetNode().GetSegmentationNode()
        segmentation = segmentation_node.GetSegmentation()
        for obj in self.logic.objects:
            segment_id = segmentation.GetSegmentIdBySegmentName(obj["name"]) or segmentation.AddEmptySegment(
                "", obj["name"]
            )
            self.objects[segment_id] = obj["label"]
            mask = (self.logic.labels == obj["label"]).astype(np.uint8)
            slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentation_node, segment_id, volume)
        self.heartbeatTimer.start()
        self.statusLabel.text = f"resumed session {self.logic.session['id']}: {len(self.objects)} objects"

    def closeSession(self):
        session_id = self.sessionBox.currentData
        if self.logic is None or not session_id:
            return
        if self.logic.session is not None and self.logic.session["id"] == session_id:
            self._forget()
        self._start(lambda: self.logic.close_session(session_id), lambda _: self.refreshSessions(), "closing…")
