package agentapi

// Topics of the events the Events service streams. Each envelope's event is
// the containerd event type named beside its topic; the shim forwards no
// other.
const (
	// TopicTaskOOM carries a containerd.events.TaskOOM: the kernel
	// OOM-killed a process of the container.
	TopicTaskOOM = "/tasks/oom"
)
