# frozen_string_literal: true

# The machines of the Vagrant cluster and the hakube cluster definition that describes
# them. The Vagrantfile passes its settings here; nothing in this file talks to Vagrant,
# so the definition can be written (and tested) without it.
#
# Address plan on the private /24 network NETWORK.0/24:
#   masters  NETWORK.10 .. NETWORK.19   master0, master1, ...
#   workers  NETWORK.20 .. NETWORK.99   worker0, worker1, ...
#   HAProxy  NETWORK.100                lb (not a cluster node)

require "json"

module HakubeVagrant
  # The user hakube logs in as: every Vagrant box has it, with passwordless sudo.
  LOGIN_USER = "vagrant"
  # Where the provisioners upload keys on a machine before installing them.
  UPLOAD_DIR = "/home/vagrant/.hakube-keys"
  NETWORK_PROVIDERS = %w[calico cilium flannel].freeze

  # One VM: its name (also the Kubernetes node name), role and private IP.
  Machine = Struct.new(:name, :role, :ip, keyword_init: true)

  # The settings at the top of the Vagrantfile, checked.
  class Settings
    attr_reader :cluster_name, :masters, :workers, :network, :kubernetes_version,
                :network_provider, :ssh_login_key

    def initialize(cluster_name:, masters:, workers:, network:, kubernetes_version:,
                   network_provider:, ssh_login_key: nil)
      @cluster_name = cluster_name
      @masters = masters
      @workers = workers
      @network = network
      @kubernetes_version = kubernetes_version
      @network_provider = network_provider
      @ssh_login_key = ssh_login_key
      check
    end

    def masters_list
      Array.new(masters) { |i| Machine.new(name: "master#{i}", role: :master, ip: "#{network}.#{10 + i}") }
    end

    def workers_list
      Array.new(workers) { |i| Machine.new(name: "worker#{i}", role: :worker, ip: "#{network}.#{20 + i}") }
    end

    def nodes
      masters_list + workers_list
    end

    def load_balancer_ip
      "#{network}.100"
    end

    def node_network_cidr
      "#{network}.0/24"
    end

    private

    def check
      problems = []
      problems << "MASTERS must be 1, 3, 5 or 7 (etcd needs an odd number), not #{masters.inspect}" unless [1, 3, 5, 7].include?(masters)
      problems << "WORKERS must be 0 to 79, not #{workers.inspect}" unless workers.is_a?(Integer) && workers.between?(0, 79)
      unless network.is_a?(String) && network.match?(/\A\d{1,3}\.\d{1,3}\.\d{1,3}\z/) && network.split(".").all? { |o| o.to_i <= 255 }
        problems << "NETWORK must be the first three octets of a /24, such as \"192.168.56\", not #{network.inspect}"
      end
      unless cluster_name.is_a?(String) && cluster_name.match?(/\A[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\z/)
        problems << "CLUSTER_NAME must be lowercase letters, digits and '-', not #{cluster_name.inspect}"
      end
      problems << "NETWORK_PROVIDER must be one of #{NETWORK_PROVIDERS.join(', ')}, not #{network_provider.inspect}" unless NETWORK_PROVIDERS.include?(network_provider)
      problems << "SSH_LOGIN_KEY must be nil or the path of a private key, not #{ssh_login_key.inspect}" unless ssh_login_key.nil? || (ssh_login_key.is_a?(String) && !ssh_login_key.empty?)
      raise ArgumentError, "hakube Vagrantfile settings: #{problems.join('; ')}" unless problems.empty?
    end
  end

  # The cluster definition for these machines, as a Hash in the order it is written.
  # `schema` is the "$schema" path, relative to where the definition is written.
  def self.definition(settings, schema:)
    definition = {
      "$schema" => schema,
      "clusterName" => settings.cluster_name,
      "masterLoadBalancerAddress" => settings.load_balancer_ip,
      "sshLoginUser" => LOGIN_USER,
    }
    definition["sshLoginKey"] = settings.ssh_login_key if settings.ssh_login_key
    definition.merge(
      # The provisioners install the host keys render generated, so they can be pinned.
      "hostKeyPolicy" => "strict",
      "kubernetesVersion" => settings.kubernetes_version,
      "nodeNetworkCIDR" => settings.node_network_cidr,
      "podNetworkCIDR" => "10.244.0.0/16",
      "serviceCIDR" => "10.96.0.0/12",
      "masters" => settings.masters_list.map { |m| node_entry(m) },
      "workers" => settings.workers_list.map { |m| node_entry(m) },
      "hooks" => { "networkProvider" => settings.network_provider }
    )
  end

  def self.node_entry(machine)
    { "nodeName" => machine.name, "privateIP" => machine.ip }
  end

  # JSON text with one key per line and one node per line, like the samples.
  def self.to_json_text(definition)
    inline = ->(value) { JSON.generate(value, space: " ", object_nl: " ", array_nl: " ") }
    lines = definition.map do |key, value|
      text = if value.is_a?(Array) && !value.empty?
               "[\n#{value.map { |v| "    #{inline.call(v)}" }.join(",\n")}\n  ]"
             elsif value.is_a?(Array)
               "[]"
             else
               inline.call(value)
             end
      "  #{JSON.generate(key)}: #{text}"
    end
    "{\n#{lines.join(",\n")}\n}\n"
  end

  # Writes `text` to `path` unless the file already holds exactly that (so the file's
  # time stamp only moves when the settings change). Returns true when it wrote.
  def self.write_if_changed(path, text)
    return false if File.exist?(path) && File.read(path) == text

    File.write(path, text)
    true
  end

  # The public key installed into the login user's authorized_keys.
  def self.login_public_key(settings, assets_dir)
    if settings.ssh_login_key
      "#{File.expand_path(settings.ssh_login_key)}.pub"
    else
      File.join(assets_dir, "ssh", "id_ed25519.pub")
    end
  end

  # The host key pair `hakube render` generated for `node`: [private, public].
  def self.host_key_files(assets_dir, node)
    private_key = File.join(assets_dir, "ssh", "host-keys", node, "ssh_host_ed25519_key")
    [private_key, "#{private_key}.pub"]
  end

  # Every file the provisioners need that does not exist.
  def self.missing_files(settings, assets_dir)
    wanted = [login_public_key(settings, assets_dir)]
    settings.nodes.each { |n| wanted.concat(host_key_files(assets_dir, n.name)) }
    wanted.reject { |f| File.file?(f) }
  end

  # Whether this vagrant command may run provisioners (and so needs the keys).
  def self.provisioning?(argv)
    command = argv.find { |a| !a.start_with?("-") }
    return false if argv.include?("--no-provision")

    %w[up provision].include?(command) || (command == "reload" && argv.include?("--provision"))
  end
end
