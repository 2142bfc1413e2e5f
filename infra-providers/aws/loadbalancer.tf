# An internet-facing network load balancer in the three subnets: TCP 6443 to every
# master, each checked with GET /readyz over HTTPS. Its DNS name is the definition's
# masterLoadBalancerAddress (kubeadm's controlPlaneEndpoint).

resource "aws_lb" "api" {
  name                             = "${var.cluster_name}-api"
  load_balancer_type               = "network"
  internal                         = false
  subnets                          = aws_subnet.public[*].id
  security_groups                  = [aws_security_group.lb.id]
  enable_cross_zone_load_balancing = true

  depends_on = [aws_internet_gateway.main]
}

resource "aws_lb_target_group" "api" {
  name                 = "${var.cluster_name}-api"
  port                 = 6443
  protocol             = "TCP"
  target_type          = "instance"
  vpc_id               = aws_vpc.main.id
  deregistration_delay = 30
  # Masters reach the API server through this load balancer too; with the client's IP
  # preserved, a master picked as its own target would drop the reply (no hairpin).
  preserve_client_ip = false

  health_check {
    protocol            = "HTTPS"
    path                = "/readyz"
    port                = "traffic-port"
    matcher             = "200"
    interval            = 10
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }
}

resource "aws_lb_listener" "api" {
  load_balancer_arn = aws_lb.api.arn
  port              = 6443
  protocol          = "TCP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.api.arn
  }
}

resource "aws_lb_target_group_attachment" "api" {
  for_each = { for m in local.masters : m.key => aws_instance.node[m.key].id }

  target_group_arn = aws_lb_target_group.api.arn
  target_id        = each.value
  port             = 6443
}
